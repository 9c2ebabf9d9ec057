-- The pipeline's own blocks (issue 10): thumbnails made when first asked for.

-- name: set_image_thumbnail
-- A stored image gets its thumbnail when first asked for it; the first one made stays.
UPDATE images SET thumbnail_sha256 = :thumbnail_sha256
WHERE sha256 = :sha256 AND thumbnail_sha256 IS NULL;
