"""Protection: the seams (:mod:`.seams`), the engines (:mod:`.face_cloak`, :mod:`.voice_mask`), the one module
that knows them both (:mod:`.registry`), torch (:mod:`.torch_env`) and the model files (:mod:`.weights`).

Nothing here imports the media pipeline, the service or the API.
"""
