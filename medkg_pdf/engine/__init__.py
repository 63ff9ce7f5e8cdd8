"""The embedded default engine: a CPU OCR model (RapidOCR, ONNX models shipped in its wheel) turned into
page markdown and served behind vLLM's OpenAI-compatible HTTP contract, for machines without a GPU."""
