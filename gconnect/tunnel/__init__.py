"""The data path: one tunnel from its request head to its last byte."""
