"""The value document: reading it from text, PDF and word-processor files (ingest, docformats), cutting it
into chunks (chunking), finding the chunks that decide a question (retrieval) and laying them out in a
prompt (passages), one layout for training and for answering.

Imports runs and the foundation modules; no stage.
"""
