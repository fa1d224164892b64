"""Files in and out: nothing here knows about training.

    atomic   atomic_write, atomic_save_torch: every file the project writes goes through them
    files    open_regular_file: .ply files, --config and --prompts-file are opened through it (no devices, FIFOs)
    ply      save_ply / load_ply: the standard 3DGS .ply layout, validated on the way in
    export   export(splats, path, format) for .ply, .splat and .compressed.ply; format_from_path
    images   to_uint8, contact_sheet, save_png, save_gif

Submodules are not imported here, so writing a config does not pull in plyfile, gsplat or Pillow.
"""
