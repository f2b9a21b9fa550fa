"""Readers of the data sets the stage step can stage; one module per source format.

Each reader is a :class:`tasks.sources.base.Source`: it describes its identity (for the content
address), its schema, and streams its clients one at a time (never the whole data set in memory).
"""
