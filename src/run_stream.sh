#!/bin/sh
# Entry point of the response-streaming chat function (Lambda Web Adapter): uvicorn serves
# Berry's chat app on the port the adapter forwards to, and the adapter streams the body back
# as it comes. The app's start-up (config, DynamoDB) runs before uvicorn listens, so the
# adapter's TCP readiness check passes only once Berry can answer. On SIGTERM (Lambda's
# shutdown) uvicorn runs the app's shutdown, which flushes the state store's last deltas.
# Code in /var/task, the AWS SDK layer in /opt/python: a fresh interpreter has neither on
# its path. One request at a time per environment: plain asyncio and h11 are enough.
export PYTHONPATH="/var/task:/opt/python:${PYTHONPATH:-}"
exec python -m uvicorn berry_handlers.chat:app \
    --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" --loop asyncio --http h11 \
    --no-access-log --log-level warning --timeout-graceful-shutdown 1
