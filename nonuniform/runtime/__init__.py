"""The process the library runs in: torch's CPU threads (``threads``), the C allocator
(``allocator``), memory (``memory``) and devices (``device``).

Nothing here runs on import: the CLI applies the thread and allocator policies, a library user
calls :func:`~nonuniform.runtime.threads.configure_threads` and
:func:`~nonuniform.runtime.allocator.configure_allocator` if they want them."""
