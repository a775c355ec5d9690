"""Running a trained detector on a user's images: pictures and results files."""
