"""Pictures in and out: decoding / encoding with metadata kept, the batch of files a command works on, tiling."""
