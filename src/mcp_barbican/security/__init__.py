"""Security layers: each decision a pure function, each layer a pure-ASGI class."""
