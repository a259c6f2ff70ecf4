from typing import Any

from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from core.params import integer_param


class Pagination(PageNumberPagination):
    """Page-number pagination whose ``page_size`` is a 400 when it is not a whole number from 1 to
    ``max_page_size`` (DRF's own silently falls back to the default)."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int | None:
        size = integer_param(request, self.page_size_query_param, minimum=1, maximum=self.max_page_size)
        return self.page_size if size is None else size

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
            elif parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
        return parameters
