# Gunicorn settings for flask-table (Debian's gunicorn 20.1, gthread worker).
import os

bind = "0.0.0.0:" + os.environ.get("PORT", "8080")
# ONE worker process: each worker would build its own 1.2 GB table. Threads give the concurrency.
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("THREADS", "16"))
# No worker heartbeat timeout: building the table takes seconds, and after a checkpoint/restore
# the wall clock jumps, which a heartbeat check could take for a hung worker and kill it.
timeout = 0
graceful_timeout = 5
keepalive = 65          # seconds an idle keep-alive connection stays open
backlog = 1024
# The worker heartbeat file: keep it on the container's own filesystem, not /dev/shm.
worker_tmp_dir = "/tmp"
accesslog = None        # one line per request would dominate the logs under load
errorlog = "-"
loglevel = "info"
# No control socket or stats daemon; nothing listens or connects besides the HTTP port.
