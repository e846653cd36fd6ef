"""`ddpmkit serve`: a local web page to generate faces, steer attributes, inpaint by painting a
mask and interpolate, with the denoising shown live; one job on the device at a time.

- `runs.py`: the runs under the served folders, newest first, found by name (never by path);
- `jobs.py`: the queue (one worker thread, positions, cancel, failures as one line, events);
- `forms.py`: the page's requests checked into jobs; `tasks.py`: what each job does;
- `uploads.py`: pictures from the page, size-limited and checked; `faces.py`: faces and masks
  as a run sees them;
- `app.py`: the routes (Starlette); `server.py`: the socket and uvicorn; `page.html`: the page.
"""
