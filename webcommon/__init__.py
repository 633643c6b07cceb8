"""HTTP pieces both faces use (the WebDAV face in ``davserver``, the extension API in
``sync_ext.api``): request bodies, RFC 9457 problem details, strict number parsing, and the
server's environ extensions. It imports neither face, so neither face imports the other.
"""
