"""Running a trained detector on a user's images and videos: pictures, videos and results files."""
