"""The Gradio playground (chat, voice, picture), mounted at /playground."""
