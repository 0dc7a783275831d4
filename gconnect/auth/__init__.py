"""Who may use the proxy: htpasswd files, Basic credentials, the checking cache."""
