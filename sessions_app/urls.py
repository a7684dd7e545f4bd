from django.urls import path

from organizations.urls import pending

urlpatterns = [
    path("api-keys/", pending, name="api_keys"),
    path("command-generator/", pending, name="command_generator"),
]
