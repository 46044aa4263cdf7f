"""autointerp."""
