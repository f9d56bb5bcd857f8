"""Celery tasks: series -> volume -> features -> model -> SR -> PACS."""
