"""Synthetic multi-contrast LUMIR-style data from label maps."""
