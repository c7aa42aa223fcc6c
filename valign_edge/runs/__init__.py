"""The run folder: its paths, manifest, stage keys and lock (workspace), what valign wrote in it (owned),
and deleting what a run holds of the document (purge).

Imports only the foundation modules beside it (errors, files). Every stage reads and writes through here.
"""
