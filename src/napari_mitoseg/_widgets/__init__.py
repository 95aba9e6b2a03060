"""The napari front end: one dock widget per file, the only Qt code in the package.

Widgets map layers to arrays, start ``thread_worker`` generators over the headless core
(:mod:`napari_mitoseg.api` and friends) and write results back to layers in the main thread.
Nothing here imports torch at module level.
"""
