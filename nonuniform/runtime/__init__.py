"""The process the library runs in: torch's CPU threads (``threads``) and devices (``device``).

Nothing here runs on import: the CLI applies the thread policy, a library user calls
:func:`~nonuniform.runtime.threads.configure_threads` if they want it."""
