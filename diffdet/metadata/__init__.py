"""diffdet.metadata: dataset class lists shipped with the package (LVIS v1's categories).

Kept apart from :mod:`diffdet.data` so that the model config can name a dataset's classes without
importing the data pipeline.
"""
