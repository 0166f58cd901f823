"""Engine adapters behind small interfaces: chat, transcribe, ocr."""
