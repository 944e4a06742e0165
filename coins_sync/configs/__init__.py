"""Rule files: finding them, reading their YAML with locations, checking them, and the
typed rules they describe.

Import the module you need (``coins_sync.configs.model`` for ``RuleKey``); this package
file imports nothing, so that code needing only the model never loads the YAML reader.
"""
