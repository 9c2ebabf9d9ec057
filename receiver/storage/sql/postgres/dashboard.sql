-- The dashboard's reads (receiver/storage/dashboard.py): what its pages show that the API's stores do not ask
-- (PostgreSQL). Timestamps are Unix seconds (double precision), UTC. Parameters are named.

-- jobs pages

-- name: list_dashboard_jobs
-- One page of the jobs list, newest first, with the prompt (its head) and the first stored input and output
-- image of each job. :search matches a job id or provider request id exactly, or a part of the metadata
-- (:pattern, `%...%` with `\` escaping, case-insensitive as SQLite's LIKE). An input holding an escaped NUL
-- (`\u0000`, which the json type cannot give out as text) shows no prompt rather than failing the page.
SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
    j.created_at, j.submitted_at, j.completed_at, j.updated_at,
    CASE WHEN strpos(j.input, '\u0000') = 0 THEN left(j.input::json ->> 'prompt', :prompt_chars) END AS prompt,
    (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
     ORDER BY ji.position LIMIT 1) AS input_sha256,
    (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
     ORDER BY ji.position LIMIT 1) AS output_sha256
FROM jobs AS j
WHERE (:status::text IS NULL OR j.status = :status) AND (:provider::text IS NULL OR j.provider = :provider)
  AND (:model::text IS NULL OR j.model = :model)
  AND (:since::double precision IS NULL OR j.created_at >= :since)
  AND (:until::double precision IS NULL OR j.created_at < :until)
  AND (:search::text IS NULL OR j.id = :search OR j.provider_request_id = :search
       OR j.metadata ILIKE :pattern::text ESCAPE '\')
  AND (:cursor::text IS NULL OR j.id < :cursor)
ORDER BY j.id DESC LIMIT :limit;

-- name: list_dashboard_job_changes
-- The jobs list's live feed: jobs changed after (:since, :after_id), in (updated_at, id) order. Open jobs
-- through their partial index; finished ones only when they finished after :recent (their image copy still
-- changes them).
SELECT * FROM (
    SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
        j.created_at, j.submitted_at, j.completed_at, j.updated_at,
        CASE WHEN strpos(j.input, '\u0000') = 0 THEN left(j.input::json ->> 'prompt', :prompt_chars) END AS prompt,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS input_sha256,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS output_sha256
    FROM jobs AS j
    WHERE j.status IN ('pending', 'submitted', 'running') 
      AND (j.updated_at > :since OR (j.updated_at = :since AND j.id > :after_id))
    UNION ALL
    SELECT j.id, j.provider, j.model, j.status, j.metadata, j.error, j.provider_request_id, j.images_status,
        j.created_at, j.submitted_at, j.completed_at, j.updated_at,
        CASE WHEN strpos(j.input, '\u0000') = 0 THEN left(j.input::json ->> 'prompt', :prompt_chars) END AS prompt,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'input' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS input_sha256,
        (SELECT ji.sha256 FROM job_images AS ji WHERE ji.job_id = j.id AND ji.role = 'output' AND ji.sha256 IS NOT NULL
         ORDER BY ji.position LIMIT 1) AS output_sha256
    FROM jobs AS j
    WHERE j.status IN ('succeeded', 'failed', 'cancelled') AND j.completed_at >= :recent 
      AND (j.updated_at > :since OR (j.updated_at = :since AND j.id > :after_id))
) AS changed
ORDER BY updated_at, id LIMIT :limit;

-- name: list_dashboard_job_images
-- A job's images for its page, with when each was stored: outputs by position, then the input.
SELECT ji.role, ji.position, ji.sha256, ji.source_url, ji.error, ji.created_at, i.content_type, i.width, i.height,
    i.bytes
FROM job_images AS ji LEFT JOIN images AS i ON i.sha256 = ji.sha256
WHERE ji.job_id = :job_id ORDER BY ji.role DESC, ji.position;

-- name: list_dashboard_job_events
-- A job's events (the final one, normally) for its timeline.
SELECT seq, id, type, created_at FROM events WHERE job_id = :job_id ORDER BY seq;
