-- 0005_uploads: a job may take a file uploaded through POST /v1/uploads as
-- its input; input_upload is that object's key (<project>/uploads/<id>/<name>),
-- handed to the stages without needs as the input "upload".
ALTER TABLE jobs ADD COLUMN input_upload text;
