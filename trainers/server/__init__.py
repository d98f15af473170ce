"""`trustreward serve`: the judge over HTTP, for PPO trainers that take a remote reward (OpenRLHF, verl).

- `app`: the routes (`create_app`; the protocol, the deadline and the stand-ins are described there);
- `models`: the request and response bodies;
- `holding`: per-sample clients' groups, retries that take over their gone twin's place, the byte cap;
- `batching`: the queue and the one worker that hands the judge what arrived together;
- `guard`: host, token, body and JSON checks before any route runs;
- `command`: the `serve` flags and entry point.
"""

from .app import create_app, response_of
from .command import ServeArguments, hosts_for, main

__all__ = ["ServeArguments", "create_app", "hosts_for", "main", "response_of"]
