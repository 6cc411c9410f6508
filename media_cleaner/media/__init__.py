"""Media: finding and running ffmpeg (:mod:`.ffmpeg`), probing files (:mod:`.probe`), and the pipeline that
decodes, hands frames and sound to the protectors and encodes the result (:mod:`.pipeline`).

It knows the protection seams only (never an engine, the service or the API) and imports no torch.
"""
