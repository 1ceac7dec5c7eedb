"""`relay demo`: the relay, a development provider and a sample app, on loopback."""
