-- 0006_ready_by_module: a module's ready tasks in id order. A queued job's
-- queue.position counts the ready tasks of its module ahead of it (GET
-- /v1/jobs/{id}, bounded at 100): with this index that is a short backward
-- index-only scan; through tasks_ready (id) it read every ready task of every
-- module (27 ms a GET with 50,000 queued). The claim, which asks for one
-- module's ready tasks in id order, can use it too.
CREATE INDEX tasks_ready_module ON tasks (module, id) WHERE status = 'ready';
