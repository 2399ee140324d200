"""WebUI-side code: runs in the WebUI's process; never imports torch or the training libraries."""
