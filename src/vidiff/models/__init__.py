"""Networks, one small module per family, composed from vidiff.layers."""
