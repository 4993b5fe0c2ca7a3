"""Pipelines: encode → prepare → sample → decode → output."""
