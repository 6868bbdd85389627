"""Concrete bilevel problems."""
