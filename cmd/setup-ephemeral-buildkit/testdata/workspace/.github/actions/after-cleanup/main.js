// Nothing to do before the job: the post step is what counts.
