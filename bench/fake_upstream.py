"""nginx as the benchmark's fast fake upstream: OpenAI, Anthropic and Bedrock answers, fixed.

Paths (``{root}`` is ``http://127.0.0.1:<port>``):

* OpenAI: ``/v1/chat/completions`` (JSON), ``/stream/v1/chat/completions`` (SSE);
* Anthropic: ``/v1/messages`` (JSON), ``/stream/v1/messages`` (SSE): a client picks stream or
  not by base URL, since nginx does not read the body;
* Bedrock: ``/model/<id>/converse`` (JSON) and ``/model/<id>/converse-stream`` (event-stream
  frames from a file). nginx matches locations against the decoded path, so the location
  names the id with its ``:`` while Berry sends ``%3A``.

nginx's static module answers POST with 405; ``error_page 405 =200 $uri`` sends the request
on as a GET to the same location, which serves the file (one internal redirect, no I/O).
"""

from __future__ import annotations

from pathlib import Path

from canned import (
    ANTHROPIC_MESSAGE,
    ANTHROPIC_STREAM,
    BEDROCK_CONVERSE,
    BEDROCK_MODEL,
    BEDROCK_STREAM,
    OPENAI_COMPLETION,
    OPENAI_STREAM,
    nginx_string,
)

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 '{openai}';
    }}
    location = /stream/v1/chat/completions {{
      default_type text/event-stream;
      return 200 '{openai_stream}';
    }}
    location = /v1/messages {{
      default_type application/json;
      return 200 '{anthropic}';
    }}
    location = /stream/v1/messages {{
      default_type text/event-stream;
      return 200 '{anthropic_stream}';
    }}
    location = "/model/{bedrock_model}/converse" {{
      default_type application/json;
      return 200 '{bedrock}';
    }}
    location = "/model/{bedrock_model}/converse-stream" {{
      alias {dir}/converse-stream.bin;
      default_type application/vnd.amazon.eventstream;
      error_page 405 =200 $uri;
    }}
  }}
}}
"""


def write_nginx_config(folder: Path, port: int) -> Path:
    """The config (and the ConverseStream body it serves) in ``folder``; returns its path."""
    body = folder / "converse-stream.bin"
    body.write_bytes(BEDROCK_STREAM)
    # nginx's workers drop root for an unprivileged user, who must reach the file (a
    # temporary folder is 0700): traverse the folder, read that one file.
    folder.chmod(0o711)
    body.chmod(0o644)
    config = folder / "nginx.conf"
    config.write_text(
        NGINX_CONF.format(
            dir=folder,
            port=port,
            openai=nginx_string(OPENAI_COMPLETION),
            openai_stream=nginx_string(OPENAI_STREAM),
            anthropic=nginx_string(ANTHROPIC_MESSAGE),
            anthropic_stream=nginx_string(ANTHROPIC_STREAM),
            bedrock=nginx_string(BEDROCK_CONVERSE),
            bedrock_model=BEDROCK_MODEL,
        )
    )
    return config
