#!/bin/sh
# Entry point of the response-streaming chat function (Lambda Web Adapter): uvicorn serves
# Berry's chat app on the port LWA forwards to, and LWA streams the body back as it comes.
export PYTHONPATH="/var/task:${PYTHONPATH:-}"
exec python -m uvicorn berry_handlers.chat:app \
    --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" \
    --no-access-log --log-level warning --timeout-graceful-shutdown 5
