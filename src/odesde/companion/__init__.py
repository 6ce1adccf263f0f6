"""The top layer: the machinery that runs, checks and publishes the book.

- :mod:`.params`: a notebook's ``parameters`` cell read as a typed declaration, and validation;
- :mod:`.pipeline`: profiles, the cached papermill runner, the run table (``odesde run``);
- :mod:`.figures`: the book's plot style and figures saved with their provenance;
- :mod:`.checks`: a chapter's checks, recorded for the results overview;
- :mod:`.book`: assembling and building the Jupyter Book (``odesde book``);
- :mod:`.cli`: the ``odesde`` command.
"""
