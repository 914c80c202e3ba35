"""Where a program's gens and selects run: in process (`local`), or over HTTP (`http`, `openai`)."""
