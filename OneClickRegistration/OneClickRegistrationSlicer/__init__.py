"""The Slicer side of One-Click Registration: MRML nodes in, the core's command line as a child process, nodes out.

One concern per module: :mod:`.convert` (nodes <-> images, transforms, files), :mod:`.command` (the
child's inputs and command line), :mod:`.child_job` (following and stopping the child),
:mod:`.outcome` (its outputs read back), :mod:`.scene` (applying them, and undoing exactly that),
:mod:`.results_table`, :mod:`.summary`, :mod:`.detection` (the panel's cached modality label) and
:mod:`.registration` (console and batch use). Only the module file touches Qt. Nothing is imported
here, so Slicer's start-up does not load numpy or SimpleITK.
"""
