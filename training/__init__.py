"""The offline build: data, training, optimisation, export and evaluation of shopserve's models.

Nothing here is imported by a serving process (the ``import-linter`` contracts in ``pyproject.toml``
check it); torch and transformers live on this side only, installed by the ``train`` extra.
"""
