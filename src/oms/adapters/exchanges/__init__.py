"""Exchange gateways: real exchanges through ccxt."""
