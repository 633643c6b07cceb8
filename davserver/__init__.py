"""davserver: the WebDAV face, the app assembly and the command line."""
