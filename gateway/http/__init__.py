"""The Twisted edges of the MSH: the inbound HTTPS endpoint and the delivery client."""
