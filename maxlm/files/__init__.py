"""The file layer under curation and training: formats, readers, writers, atomic writes, the cache.

It sits at the bottom of the dependency order: it imports only `maxlm.errors` and third-party
libraries, so every other layer (data, curation, select, synth, checkpoints) may use it.
"""
