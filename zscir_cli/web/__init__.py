"""The HTTP face of the service: the FastAPI app and its page (`app`, `static/`), and running it
on a socket (`server`). Uses `jobs.service`; nothing below imports it."""
