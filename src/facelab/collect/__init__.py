"""Collecting images for the face database: URL lists, image-search crawls, video frames.

Example:
    >>> from facelab.collect.download import download_urls
    >>> download_urls(open("urls.txt").read().split(), "raw/").summary()  # doctest: +SKIP
"""
