"""A local web page for the runs of a folder: generate, restore and inpaint, and watch training
(`pixel-diffusion serve --runs runs/`). The page (static/) is plain HTML, CSS and JavaScript
served by the FastAPI app of server.py; it fetches nothing from the internet."""
