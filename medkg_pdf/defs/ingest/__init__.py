"""S3 arrivals: the sensor that registers new and changed PDFs and launches one run per document."""
