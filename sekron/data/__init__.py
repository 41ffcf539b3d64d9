"""Data bundled with sekron: a small digits MLP weight file and a text corpus."""
