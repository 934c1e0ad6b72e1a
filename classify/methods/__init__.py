"""Built-in methods; importing this package registers each of them (one module per method)."""
